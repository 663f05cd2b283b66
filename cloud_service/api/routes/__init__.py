"""One router per resource; `api.main` mounts them (the fleet's under /api/v1)."""
