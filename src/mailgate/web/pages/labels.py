"""The interface's names for configuration values (the seed's wording where it has one)."""

from __future__ import annotations

ACTION_NAMES = {
    "skip": "Skip",
    "reject": "Reject",
    "delete": "Delete message",
    "delete_attachment": "Delete attachment",
    "quarantine": "Quarantine",
    "tempfail": "Tempfail",
}

# What the message log records as a message's action.
LOG_ACTIONS = {
    "queued": "Queued for delivery",
    "quarantined": "Quarantined",
    "deleted": "Deleted",
    "rejected": "Rejected",
    "attachment removed": "Attachment removed",
    "tempfailed": "Temporary failure",
    "refused": "Refused (storage)",
}

MODULE_NAMES = {
    "antivirus": "Anti-Virus",
    "antispam": "Anti-Spam",
    "phishing": "Anti-Phishing",
    "content": "Content Filtering",
    "auth": "Mail Authentication",
}

MODE_NAMES = {
    "modules": "Use the modules' settings",
    "skip": "Skip scanning",
    "reject": "Reject",
    "delete": "Delete message",
}

VERDICT_NAMES = {
    "infected": "Infected",
    "error": "Scanner error",
    "spam": "Spam",
    "probable_spam": "Probable spam",
    "phishing": "Phishing",
    "blocked_attachment": "Blocked attachment",
    "content_match": "Content match",
    "dmarc_reject": "DMARC fail, policy reject",
    "dmarc_quarantine": "DMARC fail, policy quarantine",
    "spf_fail": "SPF fail",
}
