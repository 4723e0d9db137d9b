//! Collections, databases and indexes: create, drop, dropDatabase, renameCollection,
//! listCollections, listDatabases, createIndexes, listIndexes, dropIndexes.

use crate::error::{CommandError, Result};
use crate::state::{CommandContext, Shared};
use bson::Document;

macro_rules! not_yet {
    ($($name:ident),*) => {$(
        pub fn $name(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
            let _ = (shared, ctx, cmd);
            Err(CommandError::not_supported(concat!(stringify!($name), " is not implemented yet")))
        }
    )*};
}

not_yet!(
    create,
    drop,
    drop_database,
    rename_collection,
    list_collections,
    list_databases,
    create_indexes,
    list_indexes,
    drop_indexes
);
