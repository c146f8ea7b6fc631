"""Fleet simulator: physically plausible telemetry for a fleet of Guizhou data centers."""
