"""Recipient verification: probe the next hop before accepting RCPT (SPEC section 1 step 6)."""
