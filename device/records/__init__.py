"""The records: the only SQL of the box. One module per job: the database and its files (``store``), samples,
fields and cells (``samples``), counting and the final-label rule (``counts``), repeated views (``repeats``),
accounts and sessions (``accounts``), site calibrations (``calibrations``), the district's outbox
(``district``), backup and restore (``backup``)."""
