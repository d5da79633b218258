"""Studies behind the results page: the score study, the statistics comparison, the PEFT baseline, the defaults."""
