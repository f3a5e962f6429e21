"""Recipes: the LightningModules and DataModules that eecontrol's experiments train.

Shipped inside the wheel as ``eecontrol.recipes``; every data set is real and comes in a
package (no download at run time).
"""
