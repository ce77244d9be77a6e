"""Where a row or a change becomes the bytes of an Iggy message: envelope, id, partition."""
