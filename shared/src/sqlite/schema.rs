//! The embedded schema, versioned with `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::Result;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    name   TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE tokens (
    hash    TEXT PRIMARY KEY,
    org     TEXT NOT NULL,
    role    TEXT NOT NULL,
    name    TEXT NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE stacks (
    id               INTEGER PRIMARY KEY,
    org              TEXT NOT NULL,
    project          TEXT NOT NULL,
    name             TEXT NOT NULL,
    created          INTEGER NOT NULL,
    paused           INTEGER NOT NULL DEFAULT 0,
    settings         TEXT,
    settings_version INTEGER NOT NULL DEFAULT 0,
    last_version     INTEGER NOT NULL DEFAULT 0,
    -- The deployment holding the stack's one run slot (accepted or running), if any.
    active           TEXT,
    outputs          TEXT,
    UNIQUE (org, project, name)
);

CREATE TABLE deployments (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,
    stack_id          INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    org               TEXT NOT NULL,
    version           INTEGER NOT NULL,
    operation         TEXT NOT NULL,
    status            TEXT NOT NULL,
    config            TEXT NOT NULL,
    initiator         TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    skip_intermediate INTEGER NOT NULL,
    created           INTEGER NOT NULL,
    modified          INTEGER NOT NULL,
    started           INTEGER,
    lease_owner       TEXT,
    lease_expires     INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    steps             TEXT NOT NULL DEFAULT '[]',
    log_seq           INTEGER NOT NULL DEFAULT 0,
    UNIQUE (stack_id, version)
);
-- The embedded queue: queued deployments in arrival order, overall and per stack.
CREATE INDEX deployments_queued ON deployments(seq) WHERE status = 'not-started';
CREATE INDEX deployments_stack_queue ON deployments(stack_id, seq) WHERE status = 'not-started';
CREATE INDEX deployments_org ON deployments(org, seq);
CREATE INDEX deployments_stack ON deployments(stack_id, seq);
CREATE INDEX deployments_leases ON deployments(lease_expires) WHERE status IN ('accepted', 'running');

CREATE TABLE log_entries (
    deployment_seq INTEGER NOT NULL REFERENCES deployments(seq) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    step           INTEGER NOT NULL,
    -- The line's number within its step; NULL for step headers.
    n              INTEGER,
    ts             INTEGER NOT NULL,
    header         TEXT,
    line           TEXT,
    PRIMARY KEY (deployment_seq, seq)
) WITHOUT ROWID;
CREATE INDEX log_entries_step ON log_entries(deployment_seq, step, n) WHERE n IS NOT NULL;
"#,
    r#"
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    stack_id       INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    purpose        TEXT NOT NULL,
    cron           TEXT,
    once           INTEGER,
    definition     TEXT NOT NULL,
    next_execution INTEGER,
    paused         INTEGER NOT NULL DEFAULT 0,
    created        INTEGER NOT NULL,
    modified       INTEGER NOT NULL,
    last_executed  INTEGER
);
-- The tick's index: only schedules that can fire are in it, ordered by when.
CREATE INDEX schedules_due ON schedules(next_execution) WHERE paused = 0 AND next_execution IS NOT NULL;
CREATE INDEX schedules_stack ON schedules(stack_id, created);

CREATE TABLE schedule_history (
    id          TEXT PRIMARY KEY,
    schedule_id TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    executed    INTEGER NOT NULL,
    deployment  TEXT,
    version     INTEGER,
    note        TEXT NOT NULL
);
CREATE INDEX schedule_history_by_schedule ON schedule_history(schedule_id, executed);

CREATE TABLE drift_runs (
    id                TEXT PRIMARY KEY,
    stack_id          INTEGER NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    created           INTEGER NOT NULL,
    detect_id         TEXT NOT NULL,
    detect_version    INTEGER NOT NULL,
    drift_detected    INTEGER NOT NULL,
    remediate_id      TEXT,
    remediate_version INTEGER
);
CREATE INDEX drift_runs_stack ON drift_runs(stack_id, created);
"#,
    r#"
-- The OIDC issuer's keyring: one row, rewritten on rotation.
CREATE TABLE oidc_keyring (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    body    TEXT NOT NULL,
    version INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE org_integrations (
    org    TEXT NOT NULL,
    kind   TEXT NOT NULL,
    config TEXT NOT NULL,
    PRIMARY KEY (org, kind)
) WITHOUT ROWID;

-- Webhooks; `scope` is `org/{org}` or `stack/{org}/{project}/{stack}`.
CREATE TABLE hooks (
    scope   TEXT NOT NULL,
    name    TEXT NOT NULL,
    body    TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (scope, name)
) WITHOUT ROWID;

-- Notifications to send; `due` is NULL once done.
CREATE TABLE outbox (
    id       TEXT PRIMARY KEY,
    org      TEXT NOT NULL,
    target   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    event    TEXT NOT NULL,
    body     TEXT NOT NULL,
    created  INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due      INTEGER
);
CREATE INDEX outbox_due ON outbox(due) WHERE due IS NOT NULL;
CREATE INDEX outbox_done ON outbox(created) WHERE due IS NULL;

CREATE TABLE outbox_attempts (
    message          TEXT NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
    n                INTEGER NOT NULL,
    target           TEXT NOT NULL,
    ts               INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    request_url      TEXT NOT NULL,
    request_headers  TEXT NOT NULL,
    response_code    INTEGER NOT NULL,
    response_headers TEXT NOT NULL,
    response_body    TEXT NOT NULL,
    PRIMARY KEY (message, n)
) WITHOUT ROWID;
CREATE INDEX outbox_attempts_target ON outbox_attempts(target, ts);
"#,
    r#"
CREATE TABLE bootstrap_redeemed (
    secret_hash TEXT PRIMARY KEY,
    org         TEXT NOT NULL,
    redeemed    INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // Tags, updates and engine events (the stack resource and updates behind deployments).
    r#"
ALTER TABLE stacks ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
ALTER TABLE stacks ADD COLUMN update_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE stacks ADD COLUMN resource_count INTEGER;
ALTER TABLE deployments ADD COLUMN update_version INTEGER;
ALTER TABLE deployments ADD COLUMN update_info TEXT;
CREATE INDEX deployments_updates ON deployments(stack_id, update_version)
    WHERE update_version IS NOT NULL;
-- An engine event of the deployment's update, in the log's order; header and line are NULL.
ALTER TABLE log_entries ADD COLUMN event TEXT;
"#,
    // Agent pools: a pool's agents take its deployments; the built-in workers take the rest.
    r#"
CREATE TABLE agent_pools (
    id          TEXT PRIMARY KEY,
    org         TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created     INTEGER NOT NULL
);
CREATE INDEX agent_pools_org ON agent_pools(org, created);
CREATE TABLE agents (
    pool      TEXT NOT NULL REFERENCES agent_pools(id) ON DELETE CASCADE,
    id        TEXT NOT NULL,
    version   TEXT NOT NULL,
    platform  TEXT NOT NULL,
    hostname  TEXT NOT NULL,
    ip        TEXT NOT NULL,
    pid       TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (pool, id)
) WITHOUT ROWID;
-- The pool whose agents run a deployment (NULL: the built-in workers), from its settings.
ALTER TABLE deployments ADD COLUMN agent_pool TEXT;
CREATE INDEX deployments_pool_queue ON deployments(agent_pool, seq)
    WHERE status = 'not-started' AND agent_pool IS NOT NULL;
"#,
    // Idempotency keys: a request's fingerprint, and its response once it ended (`status`).
    r#"
CREATE TABLE idempotency_keys (
    org          TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BLOB,
    expires      INTEGER NOT NULL,
    PRIMARY KEY (org, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys(expires);
"#,
    // The audit log: append-only, which triggers enforce.
    r#"
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    org        TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    token_id   TEXT NOT NULL,
    token_name TEXT NOT NULL,
    admin      INTEGER NOT NULL,
    method     TEXT NOT NULL,
    route      TEXT NOT NULL,
    path       TEXT NOT NULL,
    status     INTEGER NOT NULL,
    source_ip  TEXT NOT NULL,
    user_agent TEXT NOT NULL
);
CREATE INDEX audit_log_org ON audit_log(org, ts, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    // Approvals: a deployment's approval (JSON), and its deadline while it is pending (NULL
    // otherwise), which keeps it from being claimed and lets the reaper find it.
    r#"
ALTER TABLE deployments ADD COLUMN approval TEXT;
ALTER TABLE deployments ADD COLUMN approval_expires INTEGER;
CREATE INDEX deployments_approval_expiry ON deployments(approval_expires)
    WHERE approval_expires IS NOT NULL;
"#,
    // Per-org concurrency limits, and an index that counts an org's runs.
    r#"
ALTER TABLE orgs ADD COLUMN max_concurrent INTEGER;
-- When the org last had a deployment claimed: claims go round-robin by org.
ALTER TABLE orgs ADD COLUMN last_claim INTEGER;
CREATE INDEX deployments_org_active ON deployments(org) WHERE status IN ('accepted', 'running');
"#,
    // Bulk requests, as answered (JSON).
    r#"
CREATE TABLE bulk_operations (
    org     TEXT NOT NULL,
    id      TEXT NOT NULL,
    created INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
"#,
    // Git sync: when a stack's next check is due (NULL while its sync is off) and what the
    // polling has seen (JSON).
    r#"
ALTER TABLE stacks ADD COLUMN sync_next INTEGER;
ALTER TABLE stacks ADD COLUMN sync_state TEXT;
CREATE INDEX stacks_sync_due ON stacks(sync_next) WHERE sync_next IS NOT NULL;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
