"""What trains, and when: layer groups, freeze/unfreeze, gradual unfreezing.

The selectors are `kft.select`'s, exported here too.
"""

from kft.freezing.freeze import FreezeResult
from kft.freezing.freeze import freeze
from kft.freezing.freeze import unfreeze
from kft.freezing.gradual import GradualUnfreezing
from kft.freezing.groups import LayerGroup
from kft.freezing.groups import layer_groups
from kft.freezing.prepare import prepare_optimizer
from kft.select import Adapters
from kft.select import All
from kft.select import Biases
from kft.select import Head
from kft.select import LastGroups
from kft.select import Name
from kft.select import Norms
from kft.select import Selector
from kft.select import TopLayers
from kft.select import Type
from kft.select import Where
from kft.select import parse_selector
