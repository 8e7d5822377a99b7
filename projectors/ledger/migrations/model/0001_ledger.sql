-- One copy of the ledger read model. Ids are UUIDs stored as BINARY(16); money is BIGINT
-- minor units; times are UTC DATETIME(6) (microseconds, as the events carry them).
-- Every statement is idempotent (IF NOT EXISTS): MySQL commits DDL at once, so a process
-- killed half-way leaves the migration marked unfinished, and store.rs re-runs it.

CREATE TABLE IF NOT EXISTS accounts (
    account_id                   BINARY(16)   NOT NULL PRIMARY KEY,
    holder_name                  VARCHAR(200) NOT NULL,
    email                        VARCHAR(320) NOT NULL,
    country                      CHAR(2)      NOT NULL,
    currency                     CHAR(3)      NOT NULL,
    -- open | frozen | closed
    status                       VARCHAR(16)  NOT NULL,
    balance_minor                BIGINT       NOT NULL,
    daily_withdrawal_limit_minor BIGINT       NOT NULL,
    frozen_reason                VARCHAR(500) NULL,
    opened_at                    DATETIME(6)  NOT NULL,
    updated_at                   DATETIME(6)  NOT NULL,
    closed_at                    DATETIME(6)  NULL,
    -- Account version of the last event folded into this row.
    version                      BIGINT UNSIGNED NOT NULL,
    -- Listing by status and/or country pages by account_id.
    KEY accounts_status_country (status, country, account_id),
    KEY accounts_country (country, account_id)
) ENGINE = InnoDB;

-- One line per money event (deposit, withdrawal, approved card payment). Declined card
-- payments move no money and are counted in daily_totals only.
CREATE TABLE IF NOT EXISTS statement_lines (
    account_id          BINARY(16)   NOT NULL,
    version             BIGINT UNSIGNED NOT NULL,
    event_id            BINARY(16)   NOT NULL,
    -- deposit | withdrawal | card_payment
    kind                VARCHAR(16)  NOT NULL,
    -- Signed: credits positive, debits negative.
    amount_minor        BIGINT       NOT NULL,
    balance_after_minor BIGINT       NOT NULL,
    description         VARCHAR(500) NULL,
    channel             VARCHAR(16)  NULL,
    merchant_name       VARCHAR(200) NULL,
    merchant_category   CHAR(4)      NULL,
    merchant_country    CHAR(2)      NULL,
    occurred_at         DATETIME(6)  NOT NULL,
    PRIMARY KEY (account_id, version),
    UNIQUE KEY statement_lines_event (event_id),
    KEY statement_lines_time (account_id, occurred_at)
) ENGINE = InnoDB;

-- Per account and UTC day.
CREATE TABLE IF NOT EXISTS daily_totals (
    account_id         BINARY(16) NOT NULL,
    day                DATE       NOT NULL,
    credits_minor      BIGINT     NOT NULL DEFAULT 0,
    debits_minor       BIGINT     NOT NULL DEFAULT 0,
    deposits           INT UNSIGNED NOT NULL DEFAULT 0,
    withdrawals        INT UNSIGNED NOT NULL DEFAULT 0,
    card_payments      INT UNSIGNED NOT NULL DEFAULT 0,
    declined_payments  INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
) ENGINE = InnoDB;

-- The projector's position, written in the same transaction as the rows above.
CREATE TABLE IF NOT EXISTS projector_partitions (
    partition_id   INT          NOT NULL PRIMARY KEY,
    -- Offset of the last record handled on this partition.
    kafka_offset   BIGINT       NOT NULL,
    event_id       BINARY(16)   NULL,
    event_time     DATETIME(6)  NULL,
    writer         VARCHAR(200) NOT NULL,
    updated_at     DATETIME(6)  NOT NULL,
    last_error     VARCHAR(2000) NULL,
    last_error_at  DATETIME(6)  NULL
) ENGINE = InnoDB;

-- Last handled version per account (applied or dead-lettered): the duplicate filter and
-- what read-your-writes waits on.
CREATE TABLE IF NOT EXISTS projector_accounts (
    account_id BINARY(16)      NOT NULL PRIMARY KEY,
    version    BIGINT UNSIGNED NOT NULL,
    event_id   BINARY(16)      NOT NULL
) ENGINE = InnoDB;
