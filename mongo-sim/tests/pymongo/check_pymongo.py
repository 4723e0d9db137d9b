#!/usr/bin/env python3
"""Checks that pymongo works against a MongoDB deployment (mongo-sim or mongod) the way the
projector's Python tooling uses it: inserts, a guarded upsert, a unique-index violation and a
change stream resumed from a stored token.

Usage: check_pymongo.py MONGODB_URI. Exits 0 when every check passes; otherwise prints what
failed and exits 1.
"""

import sys
import time
import uuid

from pymongo import ASCENDING, MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def next_change(stream, what):
    """The next event of a change stream, polling with short awaits up to a deadline."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        change = stream.try_next()
        if change is not None:
            return change
    raise CheckFailed(f"no change event for {what} within 10s")


def check_inserts(db):
    coll = db["events"]
    coll.insert_one({"_id": 1, "type": "Opened"})
    result = coll.insert_many([{"_id": 2}, {"_id": 3}])
    expect(result.inserted_ids == [2, 3], f"insert_many ids: {result.inserted_ids}")
    expect(coll.count_documents({}) == 3, "three documents after the inserts")
    expect(coll.find_one({"_id": 1}) == {"_id": 1, "type": "Opened"}, "find_one returns the insert")


def check_guarded_upsert(db):
    coll = db["accounts"]

    def apply(seq):
        return coll.update_one(
            {"_id": "acc-1", "lastSequenceNumber": seq - 1},
            {"$set": {"lastSequenceNumber": seq}, "$inc": {"balance": 10}},
            upsert=True,
        )

    first = apply(1)
    expect(first.upserted_id == "acc-1", f"first event upserts: {first.raw_result}")
    second = apply(2)
    expect(
        second.matched_count == 1 and second.modified_count == 1 and second.upserted_id is None,
        f"next event updates in place: {second.raw_result}",
    )
    try:
        apply(2)
    except DuplicateKeyError as err:
        expect(err.code == 11000, f"replayed event: code {err.code}")
        details = err.details or {}
        expect(details.get("keyPattern") == {"_id": 1}, f"keyPattern: {details}")
        expect(details.get("keyValue") == {"_id": "acc-1"}, f"keyValue: {details}")
    else:
        raise CheckFailed("a replayed event must fail with DuplicateKeyError")
    doc = coll.find_one({"_id": "acc-1"})
    expect(doc == {"_id": "acc-1", "lastSequenceNumber": 2, "balance": 20}, f"account: {doc}")


def check_unique_index(db):
    coll = db["users"]
    name = coll.create_index([("email", ASCENDING)], unique=True)
    expect(name == "email_1", f"index name: {name}")
    coll.insert_one({"email": "a@example.com"})
    try:
        coll.insert_one({"email": "a@example.com"})
    except DuplicateKeyError as err:
        expect(err.code == 11000, f"duplicate email: code {err.code}")
        details = err.details or {}
        expect(details.get("keyValue") == {"email": "a@example.com"}, f"keyValue: {details}")
    else:
        raise CheckFailed("a duplicate email must fail with DuplicateKeyError")
    expect(coll.count_documents({}) == 1, "the duplicate was not inserted")


def check_change_stream_resume(db):
    coll = db["stream"]
    with coll.watch(max_await_time_ms=200) as stream:
        coll.insert_one({"_id": "a"})
        coll.insert_one({"_id": "b"})
        first = next_change(stream, "the first insert")
        expect(first["operationType"] == "insert", f"first event: {first}")
        expect(first["documentKey"] == {"_id": "a"}, f"first event: {first}")
        stored_token = first["_id"]
        expect(isinstance(stored_token.get("_data"), str), f"resume token: {stored_token}")
    coll.insert_one({"_id": "c"})
    with coll.watch(resume_after=stored_token, max_await_time_ms=200) as stream:
        keys = [next_change(stream, "a resumed event")["documentKey"]["_id"] for _ in range(2)]
        expect(keys == ["b", "c"], f"events after the stored token: {keys}")


def main():
    if len(sys.argv) != 2:
        print("usage: check_pymongo.py MONGODB_URI", file=sys.stderr)
        return 2
    client = MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)
    db = client[f"pymongo_check_{uuid.uuid4().hex[:12]}"]
    checks = [check_inserts, check_guarded_upsert, check_unique_index, check_change_stream_resume]
    current = "ping"
    try:
        client.admin.command("ping")
        for check in checks:
            current = check.__name__
            check(db)
            print(f"ok: {current}")
    except (CheckFailed, PyMongoError) as err:
        print(f"check_pymongo: FAILED in {current}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        try:
            client.drop_database(db.name)
        except PyMongoError:
            pass
        client.close()
    print("check_pymongo: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
