<?php
/**
 * Example webhook receiver: applies each Paxyo refund to the panel's own MySQL exactly once.
 *
 * Point PAXYO_WEBHOOK_URL at this script. Configuration (environment variables):
 *   PAXYO_WEBHOOK_SECRET  the same secret as the gateway's PAXYO_WEBHOOK_SECRET
 *   PAXYO_PANEL_DSN       a PDO DSN, e.g. "mysql:host=127.0.0.1;dbname=panel;charset=utf8mb4"
 *   PAXYO_PANEL_DB_USER / PAXYO_PANEL_DB_PASSWORD  (optional)
 *
 * The panel's database needs, next to its `users` table (with a DECIMAL `balance`):
 *   CREATE TABLE paxyo_events (event_id VARCHAR(32) PRIMARY KEY) ENGINE=InnoDB;
 *
 * Exactly once: the event id is inserted into paxyo_events in the same transaction as the
 * balance change. A redelivery (or two deliveries at once) of the same event finds the id
 * already there (the second insert waits for the first transaction, then fails as a duplicate)
 * and changes nothing, answering 200 so that the gateway stops sending it.
 *
 * Why add the refund instead of copying the event's `balance`: the panel owns its users'
 * balances (it takes their payments and charges their orders itself), so the gateway's balance
 * is not the panel's number to overwrite; and a refund added once is correct in any delivery
 * order, while copying a balance from an older event that is retried late would undo newer
 * changes. `refund` in an order.updated event is the amount credited by that very event (a
 * later Partial or Canceled only tops up the difference), "0.00" when none.
 * balance.updated events (deposits) are recorded and otherwise ignored: the panel credited the
 * payment itself when it called Client::deposit.
 *
 * Answers: 400 bad signature or not an event, 200 applied or already applied, 500 when the
 * database fails (the gateway retries with backoff).
 */

declare(strict_types=1);

require_once __DIR__ . '/../Paxyo.php';

function answer(int $status, string $message): never
{
    http_response_code($status);
    header('Content-Type: text/plain; charset=utf-8');
    echo $message, "\n";
    exit;
}

if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    header('Allow: POST');
    answer(405, 'POST only');
}

$secret = getenv('PAXYO_WEBHOOK_SECRET') ?: '';
$dsn = getenv('PAXYO_PANEL_DSN') ?: '';
if ($secret === '' || $dsn === '') {
    error_log('paxyo webhook: PAXYO_WEBHOOK_SECRET and PAXYO_PANEL_DSN must be set');
    answer(500, 'receiver not configured');
}

$rawBody = file_get_contents('php://input');  // the exact bytes that were signed
try {
    $event = Paxyo\Webhook::verify($rawBody === false ? '' : $rawBody,
        $_SERVER['HTTP_PAXYO_SIGNATURE'] ?? '', $secret);
} catch (Paxyo\SignatureError $exc) {
    answer(400, $exc->getMessage());
}

// The signature proves the gateway sent it; the shape is still checked before SQL sees it.
$eventId = $event['id'];
if (preg_match('/\A[0-9]{1,32}\z/', $eventId) !== 1) {
    answer(400, 'event id is not an id');
}
$refund = null;  // a decimal string to add, or null when the event moves no money here
if ($event['type'] === 'order.updated') {
    $userId = $event['user_id'] ?? null;
    $refund = $event['refund'] ?? null;
    if (!is_int($userId) || $userId <= 0 || !is_string($refund)
        || preg_match('/\A[0-9]{1,20}(\.[0-9]{1,10})?\z/', $refund) !== 1) {
        answer(400, 'order.updated event without a user_id and refund');
    }
    if (preg_match('/\A[0.]+\z/', $refund) === 1) {
        $refund = null;  // a status change without money
    }
}

try {
    $db = new PDO($dsn, getenv('PAXYO_PANEL_DB_USER') ?: null, getenv('PAXYO_PANEL_DB_PASSWORD') ?: null, [
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_EMULATE_PREPARES => false,
    ]);
    $db->beginTransaction();
    try {
        $db->prepare('INSERT INTO paxyo_events (event_id) VALUES (?)')->execute([$eventId]);
    } catch (PDOException $exc) {
        $db->rollBack();
        if (($exc->errorInfo[1] ?? null) === 1062) {  // ER_DUP_ENTRY: applied before
            answer(200, "already applied $eventId");
        }
        throw $exc;
    }
    if ($refund !== null) {
        // CAST keeps the sum exact: MySQL would add a string to a DECIMAL as a double.
        $update = $db->prepare(
            'UPDATE users SET balance = balance + CAST(? AS DECIMAL(65,30)) WHERE id = ?');
        $update->execute([$refund, $userId]);
        if ($update->rowCount() !== 1) {
            $db->rollBack();  // not recorded: retried, and visible in `paxyo webhooks status`
            error_log("paxyo webhook: event $eventId: no user $userId in users");
            answer(500, "no user $userId");
        }
    }
    $db->commit();
} catch (PDOException $exc) {
    if (isset($db) && $db->inTransaction()) {
        $db->rollBack();
    }
    error_log("paxyo webhook: event $eventId: database error: " . $exc->getMessage());
    answer(500, 'database error');
}
answer(200, "applied $eventId");
