-- Kafka keys are arbitrary bytes: a dead letter keeps its record's key exactly, and text
-- refuses some byte sequences (NUL, invalid UTF-8), which would fail the dead letter itself.
ALTER TABLE outbox ALTER COLUMN key TYPE bytea USING convert_to(key, 'UTF8');
