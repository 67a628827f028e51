<?php
/**
 * Paxyo Realtime panel kit: one file, PHP 8.1+, needs only the curl and hash extensions.
 *
 * Copy this file into the panel and `require_once` it. It holds:
 *   - Paxyo\Client   the gateway's /v1 HTTP API (deposits, orders, accounts);
 *   - Paxyo\Token    WebSocket tokens for the browser (HS256 JWT, what /ws accepts);
 *   - Paxyo\Webhook  verification of signed webhook deliveries.
 *
 * Money is always a string ("25.00"), never a float: amounts are sent as the strings you pass
 * and answers are decoded with JSON_BIGINT_AS_STRING.
 */

declare(strict_types=1);

namespace Paxyo;

/** An answer other than 2xx from the gateway (status = the HTTP status), or no answer at all
 * (status 0: connection refused, timeout, TLS failure). `error` is the gateway's error text. */
class ApiError extends \RuntimeException
{
    public function __construct(public readonly int $status, public readonly string $error)
    {
        parent::__construct($status === 0 ? "Paxyo: no answer: $error" : "Paxyo: HTTP $status: $error",
            $status);
    }
}

/** A webhook delivery that is not signed with the secret, is too old, or is not an event. */
class SignatureError extends \RuntimeException
{
}

/** The gateway's /v1 HTTP API, authorised with the admin token (PAXYO_ADMIN_TOKEN). */
final class Client
{
    private const JSON_DECODE = JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR;
    private const JSON_ENCODE = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR;

    /** The HTTP status of the last answer: 201 when a call changed something, 200 when the same
     * deposit reference or the identical order was already there and nothing changed. */
    public int $lastStatus = 0;

    private string $baseUrl;

    /** @param string $baseUrl the gateway's address, e.g. "https://realtime.example.com" */
    public function __construct(string $baseUrl, private string $adminToken, private int $timeoutSeconds = 10)
    {
        $base = rtrim($baseUrl, '/');
        if (str_ends_with($base, '/v1')) {
            $base = substr($base, 0, -3);
        }
        $this->baseUrl = $base;
    }

    /** Credit `$amount` (a decimal string such as "25.00") to a user's balance once per
     * `$reference` (your payment id): the same reference again changes nothing. */
    public function deposit(int $userId, string $amount, string $reference): array
    {
        return $this->request('POST', '/v1/accounts/' . self::id($userId, 'userId') . '/deposits',
            ['amount' => $amount, 'reference' => $reference]);
    }

    /** Register an order placed with a provider: keys id, user_id, provider, provider_order_id,
     * quantity, charge (a string such as "10.00"), service, link. Debits the charge. */
    public function registerOrder(array $order): array
    {
        return $this->request('POST', '/v1/orders', $order);
    }

    public function order(int $id): array
    {
        return $this->request('GET', '/v1/orders/' . self::id($id, 'id'));
    }

    public function account(int $userId): array
    {
        return $this->request('GET', '/v1/accounts/' . self::id($userId, 'userId'));
    }

    private static function id(int $value, string $name): string
    {
        if ($value <= 0) {
            throw new \InvalidArgumentException("$name must be a positive integer, not $value");
        }
        return (string) $value;
    }

    private function request(string $method, string $path, ?array $body = null): array
    {
        $this->lastStatus = 0;
        $headers = ['Authorization: Bearer ' . $this->adminToken, 'Accept: application/json'];
        $curl = curl_init($this->baseUrl . $path);
        $options = [
            CURLOPT_CUSTOMREQUEST => $method,
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_CONNECTTIMEOUT => $this->timeoutSeconds,
            CURLOPT_TIMEOUT => $this->timeoutSeconds,
            CURLOPT_PROTOCOLS => CURLPROTO_HTTP | CURLPROTO_HTTPS,
        ];
        if ($body !== null) {
            $options[CURLOPT_POSTFIELDS] = json_encode((object) $body, self::JSON_ENCODE);
            $headers[] = 'Content-Type: application/json';
        }
        $options[CURLOPT_HTTPHEADER] = $headers;
        curl_setopt_array($curl, $options);
        $raw = curl_exec($curl);
        if ($raw === false) {
            $error = curl_error($curl) ?: 'request failed';
            curl_close($curl);
            throw new ApiError(0, $error);
        }
        $status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        curl_close($curl);
        $this->lastStatus = $status;
        try {
            $decoded = json_decode($raw, true, 512, self::JSON_DECODE);
        } catch (\JsonException) {
            $decoded = null;
        }
        if ($status < 200 || $status > 299) {
            $error = is_array($decoded) && is_string($decoded['error'] ?? null)
                ? $decoded['error'] : substr(trim($raw), 0, 500);
            throw new ApiError($status, $error);
        }
        if (!is_array($decoded)) {
            throw new ApiError($status, 'the answer is not a JSON object');
        }
        return $decoded;
    }
}

/** Tokens for the browser's WebSocket (/ws?token=...), signed with PAXYO_JWT_SECRET. */
final class Token
{
    /** An HS256 JWT for `$userId` ("sub", as a string) that expires in `$ttlSeconds`. */
    public static function mint(string $secret, int $userId, int $ttlSeconds = 3600): string
    {
        if ($secret === '') {
            throw new \InvalidArgumentException('the JWT secret is empty');
        }
        if ($userId <= 0) {
            throw new \InvalidArgumentException("userId must be a positive integer, not $userId");
        }
        if ($ttlSeconds <= 0) {
            throw new \InvalidArgumentException("ttlSeconds must be positive, not $ttlSeconds");
        }
        $now = time();
        $header = self::part(['alg' => 'HS256', 'typ' => 'JWT']);
        $claims = self::part(['sub' => (string) $userId, 'iat' => $now, 'exp' => $now + $ttlSeconds]);
        $signature = hash_hmac('sha256', "$header.$claims", $secret, true);
        return "$header.$claims." . self::base64url($signature);
    }

    private static function part(array $value): string
    {
        return self::base64url(json_encode($value, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR));
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }
}

/** Signed webhook deliveries: header `Paxyo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
 * "<t>.<raw body>">`, possibly with several v1 values (any one matching is enough). */
final class Webhook
{
    /**
     * The decoded event when `$rawBody` was signed with `$secret` at most `$toleranceSeconds`
     * ago; throws SignatureError otherwise. Pass the body exactly as received
     * (file_get_contents('php://input')), not a re-encoded one.
     */
    public static function verify(string $rawBody, string $signatureHeader, string $secret,
                                  int $toleranceSeconds = 300): array
    {
        if ($secret === '') {
            throw new SignatureError('the webhook secret is empty');
        }
        $timestamp = null;
        $signatures = [];
        foreach (explode(',', $signatureHeader) as $item) {
            [$key, $value] = array_pad(explode('=', trim($item), 2), 2, '');
            if ($key === 't') {
                $timestamp = $value;
            } elseif ($key === 'v1' && $value !== '') {
                $signatures[] = strtolower($value);
            }
        }
        if ($timestamp === null || preg_match('/\A[0-9]{1,12}\z/', $timestamp) !== 1) {
            throw new SignatureError('Paxyo-Signature has no valid t=<unix seconds>');
        }
        if ($signatures === []) {
            throw new SignatureError('Paxyo-Signature has no v1 signature');
        }
        if (abs(time() - (int) $timestamp) > $toleranceSeconds) {
            throw new SignatureError('Paxyo-Signature timestamp is outside the tolerance');
        }
        $expected = hash_hmac('sha256', "$timestamp.$rawBody", $secret);
        $matched = false;
        foreach ($signatures as $signature) {
            $matched = hash_equals($expected, $signature) || $matched;  // no early exit
        }
        if (!$matched) {
            throw new SignatureError('Paxyo-Signature does not match the body');
        }
        try {
            $event = json_decode($rawBody, true, 512, JSON_BIGINT_AS_STRING | JSON_THROW_ON_ERROR);
        } catch (\JsonException $exc) {
            throw new SignatureError('the signed body is not JSON: ' . $exc->getMessage());
        }
        if (!is_array($event) || !is_string($event['id'] ?? null) || !is_string($event['type'] ?? null)) {
            throw new SignatureError('the signed body is not an event (no id or type)');
        }
        return $event;
    }
}
