"""A minimal third-party driver, as docs/writing-a-driver.md walks through it."""
