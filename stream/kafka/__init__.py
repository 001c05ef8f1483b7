"""The Kafka layer: client factories (clients), routing like Kafka's default partitioner (routing), topics,
the session producer/recorder (session_io) and the formats it reads and writes (session_files, recording), the
connection check (connect), and the two places giftstream patches aiokafka 0.14 (aiokafka_patches,
columnar_fetch)."""
