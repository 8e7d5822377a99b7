-- Every running prism-ledger instance, refreshed every `generation_poll_ms`: the copy its
-- projector writes, the newest copy being built that it could open, and why it cannot
-- open one. A rebuild promotes a copy only when every instance seen lately can open it,
-- and hands over once every one of them writes it.
CREATE TABLE IF NOT EXISTS instances (
    instance    VARCHAR(200)  NOT NULL PRIMARY KEY,
    -- The generation its projector writes; NULL: none (it cannot open the live one).
    writing     INT UNSIGNED  NULL,
    -- The newest `building` generation it opened (pools connected, migrated).
    can_open    INT UNSIGNED  NULL,
    -- Why it cannot open the live or the newest building generation, if it cannot.
    error       VARCHAR(2000) NULL,
    seen_at     DATETIME(6)   NOT NULL
) ENGINE = InnoDB;
