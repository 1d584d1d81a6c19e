"""moto's server, as `moto_server` runs it, with one fix the tests need.

moto 5.2.1 does not work out a stack's outputs again when a change set is
executed (`FakeChangeSet.apply` updates the resources only), so a stack made
or changed through a change set has no outputs, unlike on AWS. `taskflow
deploy` always goes through a change set, so the tests start moto through
this file: after every executed change set, the stack's template is read
again, its outputs are worked out and its parameters become the change
set's, as `update_stack` does. Nothing else of moto changes.

Usage: python3 tests/support/moto_server.py -H 127.0.0.1 -p PORT
"""

import sys

from moto.cloudformation import models

_execute_change_set = models.CloudFormationBackend.execute_change_set


def _execute_change_set_with_outputs(self, change_set_name, stack_name=None):
    change_set = self.change_sets.get(change_set_name) or next(
        (cs for cs in self.change_sets.values()
         if cs.change_set_name == change_set_name
         and stack_name in (None, cs.stack_name, cs.stack_id)),
        None,
    )
    _execute_change_set(self, change_set_name, stack_name)
    if change_set is not None:
        stack = change_set.stack
        if change_set.parameters:
            stack.parameters = change_set.parameters
        stack._parse_template()
        stack.output_map = stack._create_output_map()


models.CloudFormationBackend.execute_change_set = _execute_change_set_with_outputs

from moto.server import main  # noqa: E402  (after the fix)

if __name__ == "__main__":
    sys.exit(main())
