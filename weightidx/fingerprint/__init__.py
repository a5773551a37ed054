"""Pure fingerprint maths: a tensor's values -> its fingerprint (tiles, sketches), and the
optional C kernel."""
