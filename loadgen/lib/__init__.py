"""The load generator as a library: pacing, the engine, recording, results, statistics, analysis, scrapes,
reports and child servers.  Nothing here knows the command line (``loadgen.commands``) or names its flags."""
