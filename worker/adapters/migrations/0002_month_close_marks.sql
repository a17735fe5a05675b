-- The log-end offsets of the input topics when a month first became closable: the month is
-- closed only once the group's committed offsets have reached them.
CREATE TABLE month_close_marks (
    period       text PRIMARY KEY,
    end_offsets  jsonb NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now()
);
