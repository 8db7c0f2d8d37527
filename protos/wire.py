"""What client and replicas agree on besides the messages themselves: metadata keys and
message size limits. Defined once here; both sides import them."""

from __future__ import annotations

# Replica-to-replica calls carry the cluster secret in this metadata key.
CLUSTER_SECRET_KEY = "x-chat-cluster-secret"
# A replica that is not the primary names the primary's address in this trailer.
PRIMARY_ADDRESS_KEY = "chat-primary-address"
# Set by replicas on their own error statuses (not a transport failure), with the error's kind.
SERVICE_ERROR_KEY = "chat-error"
# With a rate limit's RESOURCE_EXHAUSTED: the seconds until the next try is allowed.
RETRY_AFTER_KEY = "chat-retry-after"

_MIB = 1024 * 1024
# Replication batches are the largest messages (500 events of up to 4 KiB bodies each).
REPLICA_MAX_MESSAGE_BYTES = 64 * _MIB
# A client's requests and replies (a history page, a backlog batch) stay far below this.
CLIENT_MAX_MESSAGE_BYTES = 16 * _MIB

# The most message ids one Ack request may carry (the client splits longer lists).
MAX_ACK_IDS = 1000

# A login counts the unread messages only up to this many; a count of CAP + 1 means "more than
# CAP" (counting a backlog of millions on every login would cost more than the login).
UNDELIVERED_COUNT_CAP = 10_000

# The largest page a ListAccounts or History request may ask for.
MAX_PAGE_SIZE = 1000
