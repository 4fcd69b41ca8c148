"""Driving the microscope: the one Micro-Manager core loader, paired short/long collection, pair datasets, registration."""
