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
