-- One database per service of docker-compose.yml (each --db URL names one of these).
-- The postgres image runs this once, when its data volume is first initialized; after
-- adding a service here, recreate the volume (docker compose down -v) or create it by hand.
CREATE DATABASE registry;
CREATE DATABASE node_510000;
CREATE DATABASE node_510100;
CREATE DATABASE node_310000;
