"""Client reputation kept across connections, behind one small interface; stores are chosen by name."""
