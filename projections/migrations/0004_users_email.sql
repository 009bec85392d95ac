-- Login finds an account by its email: user ids are random, no longer derived from the email.
-- Not unique: one account per email is the email claim's rule in the event store, and a read
-- model must never refuse an event.
CREATE INDEX users_email ON users ((doc->>'email'));
