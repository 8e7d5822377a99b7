-- docker-compose MySQL: the prism user may create the ledger's control database and its
-- copies (prism_ledger, prism_ledger_g1, prism_ledger_g2, ...), which `prismctl rebuild
-- ledger` adds and drops.
GRANT ALL PRIVILEGES ON `prism\_ledger%`.* TO 'prism'@'%';
FLUSH PRIVILEGES;
