"""sCMOS calibration: the file format and photon conversion, the photon-transfer fit, live calibration, the report."""
