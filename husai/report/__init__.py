"""Results people would rather see than read: the plots logged next to the numbers (`plots`)
and the report of a sweep (`sweep_report`: plots, trials table, one HTML page)."""
