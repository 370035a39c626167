-- PostgreSQL store, version 1: the tables of the embedded store (storage/src/embedded/schema.rs,
-- its three versions together), with the indexes the queries of storage/src/postgres/ use.
--
-- Applied by storage/src/postgres/migrate.rs inside one transaction, together with its row in
-- schema_migrations. Released files are never edited: add 002_<name>.sql instead.
--
-- Every text column that is sorted or compared uses COLLATE "C" (byte order, as SQLite's BINARY
-- and Rust's `str` ordering), so `reactions` and `user_rooms` sort the same way on every server
-- whatever the database's locale, and the btree indexes serve those ORDER BYs.
-- Numbers are bigint (Rust u64 values up to i64::MAX; larger ones are refused before a write).

-- One row per message; (room, seq) identifies it, so writing it again is a no-op (ON CONFLICT DO NOTHING).
-- `frame` is the complete outgoing JSON, stored and returned byte for byte.
CREATE TABLE messages (
    room      text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL,
    msg_id    text NOT NULL,
    sender    text COLLATE "C" NOT NULL,
    ts_ms     bigint NOT NULL,
    client_id text COLLATE "C",
    reply_to  bigint,
    frame     bytea NOT NULL,
    PRIMARY KEY (room, seq)
);
-- find_client_id: (room, sender, client_id), the oldest first.
CREATE INDEX messages_client_id ON messages (room, sender, client_id, seq) WHERE client_id IS NOT NULL;
-- thread pages and reply counts: the replies of one root, by seq.
CREATE INDEX messages_thread ON messages (room, reply_to, seq) WHERE reply_to IS NOT NULL;

-- A room's epoch (changes when seqs may have been lost).
CREATE TABLE rooms (
    room  text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL
);

-- Per-user marks of a room; they only move forward (greatest()).
CREATE TABLE marks (
    user_id       text COLLATE "C" NOT NULL,
    room          text COLLATE "C" NOT NULL,
    read_seq      bigint NOT NULL DEFAULT 0,
    delivered_seq bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, room)
);

-- Reactions are a set of (emoji, user) per message.
CREATE TABLE reactions (
    room    text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    emoji   text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (room, seq, emoji, user_id)
);

-- The rooms of each user (a set).
CREATE TABLE user_rooms (
    user_id text COLLATE "C" NOT NULL,
    room    text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, room)
);

-- Whether a node's current run is open (no clean end_run yet).
CREATE TABLE node_runs (
    node_id text COLLATE "C" PRIMARY KEY,
    open    boolean NOT NULL
);

-- When each user was last seen, milliseconds since the Unix epoch (the latest wins).
CREATE TABLE last_seen (
    user_id text COLLATE "C" PRIMARY KEY,
    ts_ms   bigint NOT NULL
);
