//! An in-memory kernel for unit tests: holds state (links, addresses, routes, neighbours, FDB),
//! not a script of calls, and answers `Netlink` calls from it.
