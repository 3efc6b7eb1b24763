"""Workflows over the layers below: an experiment grid trains, evaluates and reports (`mtdistill experiment`)."""
