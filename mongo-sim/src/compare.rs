//! BSON comparison and sort order, as mongod defines it: the workspace's `bson-order` crate,
//! shared with the daemon's drift audit.

pub use bson_order::*;
