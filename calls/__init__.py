"""The call domain: records, the state machine, event processing and every call operation."""
