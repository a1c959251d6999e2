package npu

import "testing"

// BenchmarkExecute measures one engine execute of the decode group against
// the no-compute simulator (KILN_SIM_NOCOMPUTE=1: shapes and copies, no
// arithmetic), so what is left is host overhead:
//
//   - device: Device.Execute from another goroutine, through the device
//     thread (queue, wake-up, result);
//   - direct: the binding call alone, looped on the device thread itself.
func BenchmarkExecute(b *testing.B) {
	b.Setenv("KILN_SIM_NOCOMPUTE", "1")
	bu := setup(b, Config{SampleInterval: -1})
	d := bu.dev
	m, err := d.LoadModel(bg, layerFiles(b)[0], nil)
	must(b, err)

	b.Run("device", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := d.Execute(bg, m, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		must(b, d.Do(bg, func(th *Thread) error {
			rt := th.Runtime()
			g := m.groups[0]
			for b.Loop() {
				if err := rt.Execute(m.id, m.ectx, 0, g.io); err != nil {
					return err
				}
			}
			return nil
		}))
	})
	b.Run("thread", func(b *testing.B) {
		b.ReportAllocs()
		must(b, d.Do(bg, func(th *Thread) error {
			for b.Loop() {
				if err := th.Execute(m, 0); err != nil {
					return err
				}
			}
			return nil
		}))
	})
}

// BenchmarkExecuteParked is Device.Execute with spinning disabled: every
// request wakes the parked device thread and the parked caller.
func BenchmarkExecuteParked(b *testing.B) {
	b.Setenv("KILN_SIM_NOCOMPUTE", "1")
	d := setup(b, Config{SampleInterval: -1, SpinWait: -1}).dev
	m, err := d.LoadModel(bg, layerFiles(b)[0], nil)
	must(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Execute(bg, m, 0); err != nil {
			b.Fatal(err)
		}
	}
}
