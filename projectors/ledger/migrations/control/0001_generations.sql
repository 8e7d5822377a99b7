-- The ledger's control database: which copies of the read model exist and which one the
-- query API serves. Each copy is its own database, <control database>_g<generation>.
CREATE TABLE IF NOT EXISTS generations (
    generation    INT UNSIGNED NOT NULL PRIMARY KEY,
    database_name VARCHAR(64)  NOT NULL,
    -- building: being filled by a rebuild; live: served and kept current by prism-ledger;
    -- retired: replaced by a newer copy, kept until `prismctl rebuild ledger --drop-old`.
    state         VARCHAR(16)  NOT NULL,
    created_at    DATETIME(6)  NOT NULL,
    live_since    DATETIME(6)  NULL,
    UNIQUE KEY generations_database (database_name)
) ENGINE = InnoDB;
