//! The servers mongo-sim can play besides a current mongod without access control: an older
//! release, a server lacking an operator, and a user without some privileges. Each must
//! answer as mongod does, so that a client's start-up checks can be tested against them.

mod common;

use common::{num, start, start_sim_only};
use mongo_sim::ServerOptions;
use mongo_sim::profile::{Release, SimulatedUser};
use mongodb::bson::{Bson, doc};

fn release(version: &str, missing: &[&str]) -> ServerOptions {
    ServerOptions {
        release: Release {
            version: version.parse().unwrap(),
            missing_operators: missing.iter().map(|m| m.to_string()).collect(),
        },
        ..ServerOptions::default()
    }
}

// Manual: "buildInfo" (version, versionArray), "hello" (maxWireVersion); specifications,
// "Server Wire version and Feature List": 6.0 speaks wire version 17.
#[tokio::test]
async fn an_older_release_announces_itself() {
    let Some(env) = start_sim_only(
        "older_release_announces",
        release("6.0.19", &[]),
        "plays another release",
    )
    .await
    else {
        return;
    };
    let info = env.admin(doc! {"buildInfo": 1}).await;
    assert_eq!(info.get_str("version").unwrap(), "6.0.19");
    let parts: Vec<f64> = info
        .get_array("versionArray")
        .unwrap()
        .iter()
        .map(|v| num(Some(v)))
        .collect();
    assert_eq!(parts, vec![6.0, 0.0, 19.0, 0.0]);
    let hello = env.admin(doc! {"hello": 1}).await;
    assert_eq!(num(hello.get("maxWireVersion")), 17.0);
    let status = env.admin(doc! {"serverStatus": 1}).await;
    assert_eq!(status.get_str("version").unwrap(), "6.0.19");
}

// mongod refuses an operator it does not know while parsing the expression, wherever the
// expression is: `$expr` of a find, an aggregation stage, a pipeline update.
#[tokio::test]
async fn operators_a_release_lacks_are_unrecognized_expressions() {
    let Some(env) = start_sim_only(
        "release_lacks_operators",
        release("4.4.29", &[]),
        "plays another release",
    )
    .await
    else {
        return;
    };
    env.coll("c")
        .insert_one(doc! {"_id": 1, "a": "x"})
        .await
        .unwrap();
    let hashed = doc! {"$toHashedIndexKey": "$a"};
    let commands = [
        doc! {"find": "c", "filter": {"$expr": {"$eq": [hashed.clone(), 0]}}},
        doc! {"aggregate": "c", "pipeline": [{"$project": {"h": hashed.clone()}}], "cursor": {}},
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": [{"$set": {"h": hashed.clone()}}]}]},
    ];
    for cmd in commands {
        let (code, reply) = env.run_err(cmd).await;
        assert_eq!(code, 168, "{reply}");
        assert_eq!(
            reply.get_str("codeName").unwrap(),
            "InvalidPipelineOperator"
        );
        assert_eq!(
            reply.get_str("errmsg").unwrap(),
            "Unrecognized expression '$toHashedIndexKey'"
        );
    }
    // What 4.4 has is served.
    let reply = env
        .run(doc! {"aggregate": "c", "pipeline": [{"$project": {"n": {"$isNumber": "$a"}}}], "cursor": {}})
        .await;
    let first = &reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0];
    assert_eq!(first, &Bson::Document(doc! {"_id": 1, "n": false}));
}

#[tokio::test]
async fn a_named_operator_is_refused_by_a_current_release() {
    let Some(env) = start_sim_only(
        "missing_operator",
        release("7.0.14", &["$toHashedIndexKey"]),
        "lacks an operator mongod has",
    )
    .await
    else {
        return;
    };
    let (code, _) = env
        .run_err(doc! {"aggregate": 1, "pipeline": [{"$documents": [{"v": 1}]}, {"$set": {"h": {"$toHashedIndexKey": "$v"}}}], "cursor": {}})
        .await;
    assert_eq!(code, 168);
    let info = env.admin(doc! {"buildInfo": 1}).await;
    assert_eq!(info.get_str("version").unwrap(), "7.0.14");
}

// Manual: "connectionStatus". Without access control nobody is authenticated; this holds for
// a real mongod started without --auth too.
#[tokio::test]
async fn without_access_control_nobody_is_authenticated() {
    let env = start("connection_status_open").await;
    let reply = env
        .admin(doc! {"connectionStatus": 1, "showPrivileges": true})
        .await;
    let info = reply.get_document("authInfo").unwrap();
    assert!(info.get_array("authenticatedUsers").is_ok(), "{reply}");
    assert!(info.get_array("authenticatedUserRoles").is_ok(), "{reply}");
    if common::real_uri().is_none() {
        assert!(info.get_array("authenticatedUsers").unwrap().is_empty());
        assert!(
            info.get_array("authenticatedUserPrivileges")
                .unwrap()
                .is_empty()
        );
    }
}

// Manual: "connectionStatus" (authInfo with showPrivileges), "Privilege Actions"
// (changeStream is needed to open a change stream), and mongod's Unauthorized message.
#[tokio::test]
async fn a_user_without_an_action_is_refused_that_action_only() {
    let user = SimulatedUser::read_write_any_database_except("projector", &["changeStream"]);
    let Some(env) = start_sim_only(
        "user_without_change_stream",
        ServerOptions {
            user: Some(user),
            ..ServerOptions::default()
        },
        "plays an authenticated user",
    )
    .await
    else {
        return;
    };
    let reply = env
        .admin(doc! {"connectionStatus": 1, "showPrivileges": true})
        .await;
    let info = reply.get_document("authInfo").unwrap();
    assert_eq!(
        info.get_array("authenticatedUsers").unwrap(),
        &vec![Bson::Document(doc! {"user": "projector", "db": "admin"})]
    );
    assert_eq!(
        info.get_array("authenticatedUserRoles").unwrap(),
        &vec![Bson::Document(
            doc! {"role": "readWriteAnyDatabase", "db": "admin"}
        )]
    );
    let privileges = info.get_array("authenticatedUserPrivileges").unwrap();
    let Bson::Document(first) = &privileges[0] else {
        panic!("{reply}");
    };
    assert_eq!(
        first.get_document("resource").unwrap(),
        &doc! {"db": "", "collection": ""}
    );
    let actions = first.get_array("actions").unwrap();
    assert!(actions.contains(&Bson::String("find".into())));
    assert!(!actions.contains(&Bson::String("changeStream".into())));

    env.coll("events").insert_one(doc! {"a": 1}).await.unwrap();
    let (code, reply) = env
        .run_err(doc! {"aggregate": "events", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await;
    assert_eq!(code, 13, "{reply}");
    assert_eq!(reply.get_str("codeName").unwrap(), "Unauthorized");
    let message = reply.get_str("errmsg").unwrap();
    assert!(
        message.starts_with(&format!(
            "not authorized on {} to execute command {{ aggregate: \"events\"",
            env.db_name
        )),
        "{message}"
    );
    // A cluster action the role does not grant.
    let err = env
        .client
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .unwrap_err();
    assert_eq!(common::error_code(&err), Some(13));
    // Everything else still works.
    assert_eq!(
        env.coll("events").count_documents(doc! {}).await.unwrap(),
        1
    );
}
