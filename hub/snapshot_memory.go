package hub

import (
	"context"
	"encoding/json"
	"sync"
)

// MemorySnapshots is an in-process SnapshotSource, for tests of the core
// and for embedding the hub without Redis.
type MemorySnapshots struct {
	mu    sync.Mutex
	topos map[string]*memTopology
	// Err, when set, is returned by every call (to simulate an outage).
	err error
}

type memTopology struct {
	status string
	rows   map[string]json.RawMessage
}

var _ SnapshotSource = (*MemorySnapshots)(nil)

// NewMemorySnapshots returns an empty source.
func NewMemorySnapshots() *MemorySnapshots {
	return &MemorySnapshots{topos: map[string]*memTopology{}}
}

// Set creates or updates a topology's status.
func (m *MemorySnapshots) Set(id, status string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.topos[id]
	if t == nil {
		t = &memTopology{rows: map[string]json.RawMessage{}}
		m.topos[id] = t
	}
	t.status = status
}

// SetMutation stores a mutation row of an existing topology.
func (m *MemorySnapshots) SetMutation(id, mutationID string, row json.RawMessage) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.topos[id]; t != nil {
		t.rows[mutationID] = row
	}
}

// Delete removes a topology.
func (m *MemorySnapshots) Delete(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.topos, id)
}

// SetErr makes every call fail with err (nil restores service).
func (m *MemorySnapshots) SetErr(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
}

// Exists implements SnapshotSource.
func (m *MemorySnapshots) Exists(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false, m.err
	}
	return m.topos[id] != nil, nil
}

// Snapshot implements SnapshotSource.
func (m *MemorySnapshots) Snapshot(_ context.Context, id string) (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return Snapshot{}, m.err
	}
	t := m.topos[id]
	if t == nil {
		return Snapshot{}, ErrNotFound
	}
	rows := make([]json.RawMessage, 0, len(t.rows))
	for _, r := range t.rows {
		rows = append(rows, r)
	}
	return Snapshot{TopologyID: id, Status: t.status, InFlight: OrderInFlight(rows)}, nil
}
