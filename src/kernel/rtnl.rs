//! The real `Netlink` implementation over rtnetlink (the only module that imports it).
