"""Mail authentication: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489), and the real
client behind a border gateway."""
