import pytest

from paxyo.statuses import StatusClass, normalise_status


@pytest.mark.parametrize(("raw", "cls", "name"), [
    ("Pending", StatusClass.OPEN, "Pending"),
    ("processing", StatusClass.OPEN, "Processing"),
    ("In progress", StatusClass.OPEN, "In progress"),
    ("inprogress", StatusClass.OPEN, "In progress"),
    ("  IN_PROGRESS ", StatusClass.OPEN, "In progress"),
    ("Awaiting", StatusClass.OPEN, "Awaiting"),
    ("Active", StatusClass.OPEN, "Active"),
    ("Completed", StatusClass.COMPLETED, "Completed"),
    ("complete", StatusClass.COMPLETED, "Completed"),
    ("Partial", StatusClass.PARTIAL, "Partial"),
    ("Canceled", StatusClass.CANCELED, "Canceled"),
    ("cancelled", StatusClass.CANCELED, "Canceled"),
    ("Refunded", StatusClass.CANCELED, "Canceled"),
])
def test_known_spellings(raw, cls, name):
    status = normalise_status(raw)
    assert status.cls is cls
    assert status.name == name


@pytest.mark.parametrize("raw", ["Fail", "Failed", "Error", "Rejected", "", "on hold", "Paused"])
def test_anything_else_is_unknown_never_refundable(raw):
    status = normalise_status(raw)
    assert status.cls is StatusClass.UNKNOWN
    assert not status.cls.terminal


def test_terminal_classes():
    assert {c for c in StatusClass if c.terminal} == {
        StatusClass.COMPLETED, StatusClass.PARTIAL, StatusClass.CANCELED}
