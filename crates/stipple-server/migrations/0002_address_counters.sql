-- Per-address daily counters (sign-ups so far): 'signup:<ip>' counts for UTC day `day`.
CREATE TABLE address_counters (
    counter_key TEXT PRIMARY KEY,
    day BIGINT NOT NULL,
    count BIGINT NOT NULL
);
