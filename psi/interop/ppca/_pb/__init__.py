"""Generated protobuf modules for the PPCA interconnection messages (see ../proto/SOURCE.md)."""
