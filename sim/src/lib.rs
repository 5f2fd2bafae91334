//! keel-sim: placeholder until the simulator issue lands.
