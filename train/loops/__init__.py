"""The loops: the compiled step and the outer loop around it.

trainer.py      Trainer: the compiled train step (forward, loss scaled by the global
                batch, gradients reduced through the backend, update) and eval step;
                per call it returns the summed metrics and the stop flag
controller.py   Controller and Schedule: run steps to the next boundary, then maybe
                log, save (train.checkpoint), evaluate; stop on an agreed step
preemption.py   PreemptionWatcher: a signal becomes the stop flag every worker sums,
                so all stop after the same step (exit 42 after the save)
"""
