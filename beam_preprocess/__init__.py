"""Apache Beam job: text corpus -> sharded TFRecord windows + vocab + metadata."""
