"""The server side: routes msapp installs over MONAI Label's, upload checks, roles, the validating datastore,
active-learning strategies and what the GUIs send and read (options, train stats, sessions, leases, segments)."""
