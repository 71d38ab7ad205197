//go:build race

package controller

// raceEnabled: the race detector slows everything several times over, so
// time bounds are looser under it.
const raceEnabled = true
