//! One command from decoded document to reply: fail points, session and write-concern
//! fields, routing to its handler, error labels, `$clusterTime` and `operationTime`.
