//! The one reconciler: desired entries (from `entries_for` of every known remote lease) versus
//! installed entries (read from the kernel), diffed into ordered, idempotent ops.
