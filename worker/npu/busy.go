package npu

// Busy marks a reply (a job's run of work on the card) as running until
// the returned function is called: meanwhile the device thread's periodic
// properties sample is skipped, so the card is not asked for its
// properties between the tokens of a reply; the next tick after the last
// reply ends samples again. Refresh still samples when asked (the thermal
// governor near its thresholds, job admission). Calls nest.
func (d *Device) Busy() (done func()) {
	d.busy.Add(1)
	var once bool
	return func() {
		if !once {
			once = true
			d.busy.Add(-1)
		}
	}
}
