"""Planning: topology, model profiles, cost model, planner and simulator."""
