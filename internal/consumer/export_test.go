package consumer

// OnSyncedWaits has f called each time a Synced call begins to wait for a
// save (tests only); call the returned func to stop.
func OnSyncedWaits(f func()) (restore func()) {
	testHookWaiting.Store(&f)
	return func() { testHookWaiting.Store(nil) }
}
